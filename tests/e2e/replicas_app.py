"""The Streamlit app of replicas_e2e.py: session state (a click counter),
a file uploader (PUT /_stcore/upload_file) and three images served from
Streamlit's in-memory /media. Every one of these lives in one Streamlit
process, so each breaks when a request lands on another replica.
"""

import os
import random

import streamlit as st
from PIL import Image

st.set_page_config(page_title="switchyard replicas e2e")
st.caption("streamlit pid %d; PORT=%s" % (os.getpid(), os.environ.get("PORT", "?")))

if "presses" not in st.session_state:
    st.session_state.presses = 0
if st.button("press me"):
    st.session_state.presses += 1
st.write("presses: %d" % st.session_state.presses)

uploaded = st.file_uploader("a file", key="upload")
if uploaded is not None:
    data = uploaded.getvalue()
    seen = st.session_state.setdefault("uploads", {})
    seen[uploaded.file_id] = len(data)
    st.write("uploaded: %s %d bytes; uploads this session: %d" % (uploaded.name, len(data), len(seen)))

# Images unique to this session: their /media URLs (content hashes) exist
# in this process only, so a /media request on another replica is a 404.
seed = st.session_state.setdefault("seed", random.getrandbits(48))
columns = st.columns(3)
for index, (column, colour) in enumerate(zip(columns, ["red", "green", "blue"])):
    image = Image.new("RGB", (48, 48), colour)
    for bit in range(48):
        if seed >> bit & 1:
            image.putpixel((bit, index), (255, 255, 255))
    column.image(image, caption="image %d" % index)
