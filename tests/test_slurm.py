"""hydra/launcher=slurm on a real one-node SLURM cluster (tools/slurm/up.sh, Debian's
slurm-wlm): a sweep's jobs run as SLURM jobs, and a job that raised or that SLURM ended is
reported like a failed local job. ``make test-slurm`` runs these (root or sudo, and Debian's
package registry, to install SLURM the first time)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.runs import FAILED_MARKER

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "tools" / "slurm"


def _cluster_is_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def cluster():
    """The local cluster, brought up (installed on first use) and down again unless it was
    already running before the tests."""
    was_up = _cluster_is_up()
    up = subprocess.run([SLURM / "up.sh"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    assert _cluster_is_up()
    yield
    if not was_up:
        subprocess.run([SLURM / "down.sh"], check=True, timeout=120)
        assert not _cluster_is_up()


def _slurm_sweep(tiny_run, sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.timeout_min=15",
        "hydra.launcher.mem_gb=2",
        *tiny_run,
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _array_job_id(sweep_dir: Path) -> str:
    """The SLURM array job of a sweep, from submitit's folders (<job id>_<task>)."""
    (job_id,) = {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()}
    return job_id


def _squeue_state(job: str) -> str:
    """A queued job's compact state (PD, R, ...), or "" once it left the queue."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%t"], capture_output=True, text=True
    ).stdout
    return out.strip()


def _sacct_states(job_id: str) -> dict[str, str]:
    """Each array task's state in SLURM's accounting: {"0": "COMPLETED", ...}."""
    for _ in range(30):  # the controller hands records to slurmdbd within seconds
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "--format=JobID,State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        states = {
            line.split("|")[0].split("_")[1]: line.split("|")[1].split()[0]
            for line in out.splitlines()
            if "_" in line.split("|")[0]
        }
        if states and all(s not in ("PENDING", "RUNNING") for s in states.values()):
            return states
        time.sleep(1)
    return states


def test_a_sweep_runs_each_job_as_a_slurm_job(cluster, tiny_run, tmp_path):
    sweep = _slurm_sweep(tiny_run, tmp_path, "data.fold=0,1")
    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "summary.json").is_file()
        assert not (tmp_path / job / FAILED_MARKER).exists()
    assert _sacct_states(_array_job_id(tmp_path)) == {"0": "COMPLETED", "1": "COMPLETED"}


def test_a_failed_and_a_cancelled_job_are_reported_and_the_other_kept(cluster, tiny_run, tmp_path):
    # Job 1 raises (a negative learning rate); job 2 is cancelled (scancel) once it runs (a
    # task cancelled while pending never reaches SLURM's accounting, where submitit looks);
    # job 0 must finish and be kept.
    sweep = _slurm_sweep(tiny_run, tmp_path, "optimizer.lr=0.001,-1,0.002")
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob(".submitit/*_*/")):
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    job_id = _array_job_id(tmp_path)
    while _squeue_state(f"{job_id}_2") != "R":
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", f"{job_id}_2"], check=True)
    output, _ = sweep.communicate(timeout=900)

    assert sweep.returncode == 1, output[-3000:]
    assert (tmp_path / "0" / "checkpoints" / "summary.json").is_file()
    raised = (tmp_path / "1" / FAILED_MARKER).read_text()
    assert "optimizer.lr=-1" in raised and "Invalid learning rate" in raised
    cancelled = (tmp_path / "2" / FAILED_MARKER).read_text()
    assert f"SLURM job {job_id}_2 ended CANCELLED" in cancelled
    for marker in (raised, cancelled):  # each names SLURM's log of the job
        log_line = next(line for line in marker.splitlines() if line.startswith("log: "))
        assert Path(log_line.removeprefix("log: ")).parent.parent == tmp_path / ".submitit"
    assert "job 1 failed" in output and "job 2 failed" in output
    assert "2 job(s) of the sweep" in output
    states = _sacct_states(job_id)
    assert states["0"] == "COMPLETED" and states["2"] == "CANCELLED"
