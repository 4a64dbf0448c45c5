"""Dataset: pick a source, then see class balance, examples, image sizes, health and augmentation."""

import random

import streamlit as st

from lib import cache, charts, datasets, settings
from lib.errors import UserError
from lib.text import md_escape, plural, readable_label

st.set_page_config(page_title="Dataset · Image classifier studio", page_icon="🗂️", layout="wide")
cache.sidebar()
st.title("1 · Dataset")

SOURCES = ["Bundled sample (bean leaves)", "Upload a zip"]
if settings.allow_server_folders():
    SOURCES.append("Folder on the server")
SOURCES.append("Cats vs dogs (download)")

with st.container(border=True):
    source = st.radio("Where are your images?", SOURCES, horizontal=True, key="dataset_source")
    try:
        if source.startswith("Bundled"):
            st.caption(
                "Bean leaf photos in 3 classes (angular leaf spot, bean rust, healthy), downsized; "
                "MIT license, Makerere AI Lab."
            )
            if st.button("Use the sample", type="primary"):
                cache.set_dataset(datasets.sample_dataset_dir())
        elif source.startswith("Upload"):
            st.caption(
                "A zip with one folder per class (`cats/`, `dogs/` …), or `train/`, `validation/`, "
                "`test/` folders each holding class folders."
            )
            upload = st.file_uploader("Zip file", type=["zip"], key="dataset_zip")
            if upload is not None and upload.size > settings.max_upload_mb() * 1024 * 1024:
                st.error(
                    f"This zip is {upload.size / 1e6:.0f} MB; the limit here is {settings.max_upload_mb()} MB."
                )
            elif upload is not None and st.button("Open this zip", type="primary"):
                with st.spinner("Unpacking…"):
                    root = datasets.extract_zip(
                        upload.getvalue(),
                        cache.upload_dir(upload.name, upload.getvalue()),
                        max_files=settings.max_zip_files(),
                        max_bytes=settings.max_zip_mb() * 1024 * 1024,
                    )
                cache.set_dataset(root)
        elif source.startswith("Folder"):
            folder = st.text_input("Folder path", placeholder="/home/me/photos")
            if st.button("Open folder", type="primary") and folder:
                cache.set_dataset(datasets.check_folder(folder))
        else:
            st.caption("The classic Keras tutorial dataset: 3,000 photos of cats and dogs (68 MB download).")
            if st.button("Download cats vs dogs", type="primary"):
                with st.spinner("Downloading (68 MB)…"):
                    cache.set_dataset(datasets.download_cats_vs_dogs(settings.cache_dir() / "downloads"))
    except UserError as exc:
        st.error(str(exc))

root = cache.current_dataset()
if root is None:
    st.info("No dataset yet. Pick the bundled sample above to look around: it's one click.")
    st.stop()

with st.spinner("Checking every image…"):
    try:
        scan = cache.scan(root)
    except UserError as exc:
        st.error(str(exc))
        st.stop()

manifest = scan.manifest
usable = manifest[manifest["usable"]]
shown_root = root.name if settings.hosted() else str(root)
st.success(
    f"**{md_escape(shown_root)}**: {plural(len(usable), 'usable image')} in "
    f"{plural(len(scan.classes), 'class', 'classes')}, split into "
    + ", ".join(f"{s} {(usable['split'] == s).sum():,}" for s in charts.SPLIT_ORDER)
    + f" ({md_escape(scan.layout_text)})."
)

# Class balance
st.subheader("Class balance")
st.plotly_chart(charts.class_balance(manifest, scan.classes), key="class_balance")
baseline = datasets.majority_baseline(scan)
if baseline is not None:
    st.markdown(
        f"A model that always answers **{md_escape(readable_label(baseline.label))}** would be right "
        f"**{baseline.accuracy:.0%}** of the time on the {baseline.split} split: a useful model must beat that."
    )

# Problems
problems = scan.problems
st.subheader("Health report")
if not problems:
    st.markdown("✅ No problems found: every file is a readable image and no image appears twice.")
else:
    st.warning(
        f"{plural(len(problems), 'kind')} of problem found. Bad files are left out of training "
        "(nothing is deleted)."
    )
    st.dataframe(datasets.problems_table(scan), hide_index=True, width="stretch")

# Samples
st.subheader("Examples")
per_class = st.slider("Images per class", 2, 12, 6, key="samples_per_class")
if st.button("🔀 Show other examples"):
    st.session_state["sample_seed"] = random.randrange(1 << 30)
seed = st.session_state.get("sample_seed", 0)
for cls in scan.classes:
    rows = usable[usable["class"] == cls]
    st.markdown(f"**{md_escape(readable_label(cls))}** · {plural(len(rows), 'image')}")
    picked = rows.sample(n=min(per_class, len(rows)), random_state=seed) if len(rows) else rows
    cols = st.columns(per_class)
    for col, (_, row) in zip(cols, picked.iterrows(), strict=False):
        col.image(
            cache.thumbnail(row["path"]),
            caption=md_escape(row["relpath"].rsplit("/", 1)[-1]),
            width="stretch",
        )

# Sizes
st.subheader("Image sizes")
sizes = usable.groupby(["width", "height"]).size().sort_values(ascending=False)
if len(sizes) == 1:
    (w, h), _ = next(iter(sizes.items()))
    st.markdown(f"All images are **{w} x {h}** pixels.")
else:
    st.markdown(
        f"{plural(len(sizes), 'different size')}; from {usable['width'].min()} to {usable['width'].max()} px "
        f"wide and {usable['height'].min()} to {usable['height'].max()} px high. Training resizes them all."
    )
left, right = st.columns(2)
left.plotly_chart(charts.image_sizes(manifest), key="sizes")
right.plotly_chart(charts.aspect_ratios(manifest), key="aspects")

# Augmentation preview
st.subheader("Augmentation preview")
st.caption("What training sees when augmentation is on: random variations of one image.")
c1, c2, c3, c4, c5 = st.columns(5)
aug = dict(
    flip=c1.selectbox("Flip", ["horizontal", "vertical", "both", "none"], key="aug_flip"),
    rotation=c2.slider("Rotation (fraction of a turn)", 0.0, 0.5, 0.1, 0.05, key="aug_rot"),
    zoom=c3.slider("Zoom", 0.0, 0.5, 0.2, 0.05, key="aug_zoom"),
    contrast=c4.slider("Contrast", 0.0, 0.5, 0.1, 0.05, key="aug_contrast"),
    translation=c5.slider("Shift", 0.0, 0.3, 0.0, 0.05, key="aug_shift"),
)
if st.toggle("Show the preview", key="aug_show"):
    first = usable.sample(n=1, random_state=seed).iloc[0] if len(usable) else None
    if first is not None:
        with st.spinner("Augmenting…"):
            grid = cache.augmentation_preview(first["path"], tuple(sorted(aug.items())), seed)
        cols = st.columns(3)
        for i, img in enumerate(grid):
            cols[i % 3].image(img, width="stretch")
