"""The viewer's entry point, the file ``streamlit run`` runs (``python -m src.viewer`` starts
it with its settings): page set-up and the navigation between Scan, Run and Compare."""

import streamlit as st

st.set_page_config(page_title="sonoseg viewer", layout="wide")
st.navigation(
    [
        st.Page("views/scan.py", title="Scan", icon=":material/radiology:", default=True),
        st.Page("views/run.py", title="Run", icon=":material/table_chart:", url_path="run"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    ]
).run()
