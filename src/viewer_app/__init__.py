"""The Streamlit viewer started by ``python -m src.viewer``: ``app.py`` (the entry point and
its navigation), ``pages/`` (Scan, Run, Compare), ``ui.py`` (what the pages share: settings,
the cached model and predictions, error messages) and ``logic.py`` (everything that is not
UI, as small pure functions tested without Streamlit)."""
