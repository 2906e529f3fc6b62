"""The Streamlit viewer started by ``python -m src.viewer``: ``app.py`` (the entry point and
its navigation), ``views/`` (Scan, Run, Compare), ``ui.py`` (what the pages share: settings,
the cached model and predictions, error messages) and what is not UI, as small pure functions
tested without Streamlit: ``settings.py`` (what the launcher hands the app), ``scan.py`` (one
scan: upload checks, Dice and biometry tables, the quiz) and ``run_records.py`` (evaluated runs
and the tables over them)."""
