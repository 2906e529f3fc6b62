"""The viewer's pages: scripts that Streamlit runs (see ``src/viewer_app/app.py``), not
modules to import."""
