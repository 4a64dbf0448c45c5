"""Dataset: pick a source, then see class balance, examples, image sizes, health and augmentation."""

import random

import streamlit as st

from lib import settings
from lib.data import sources
from lib.data.scan import majority_baseline, problems_table
from lib.errors import UserError
from lib.text import md_escape, plural, readable_labels
from lib.ui import cached, charts, forms, state, widgets
from lib.vocab import SPLITS

st.title("1 · Dataset")

with st.container(border=True):
    source = st.radio(
        "Where are your images?",
        sources.source_choices(),
        format_func=sources.SOURCES.get,
        horizontal=True,
        key="dataset_source",
    )
    try:
        if source == "sample":
            st.caption(
                "Bean leaf photos in 3 classes (angular leaf spot, bean rust, healthy), downsized; "
                "MIT license, Makerere AI Lab."
            )
            if st.button("Use the sample", type="primary"):
                state.set_dataset(sources.sample_dataset_dir())
        elif source == "zip":
            st.caption(
                "A zip with one folder per class (`cats/`, `dogs/` …), or `train/`, `validation/`, "
                "`test/` folders each holding class folders."
            )
            upload = st.file_uploader(
                "Zip file", type=["zip"], key="dataset_zip", max_upload_size=settings.max_upload_mb()
            )
            if upload is not None and st.button("Open this zip", type="primary"):
                with st.spinner("Unpacking…"):
                    data = upload.getvalue()
                    state.set_dataset(state.open_zip(upload.name, data))
        elif source == "folder":
            folder = st.text_input("Folder path", placeholder="/home/me/photos")
            if st.button("Open folder", type="primary") and folder:
                state.set_dataset(sources.check_folder(folder))
        else:
            st.caption("The classic Keras tutorial dataset: 3,000 photos of cats and dogs (68 MB download).")
            if st.button("Download cats vs dogs", type="primary"):
                with st.spinner("Downloading (68 MB)…"):
                    state.set_dataset(sources.download_cats_vs_dogs(settings.cache_dir() / "downloads"))
    except UserError as exc:
        widgets.error(exc)

if state.current_dataset() is None:
    widgets.stop_with("No dataset yet. Pick the bundled sample above to look around: it's one click.")
root, scan = widgets.need_dataset()
manifest = scan.manifest
usable = scan.usable
labels = readable_labels(scan.classes)
shown_root = root.name if settings.hosted() else str(root)
st.success(
    f"**{md_escape(shown_root)}**: {plural(len(usable), 'usable image')} in "
    f"{plural(len(scan.classes), 'class', 'classes')}, split into "
    + ", ".join(f"{s} {(usable['split'] == s).sum():,}" for s in SPLITS)
    + f" ({md_escape(scan.layout_text)})."
)

st.subheader("Class balance")
st.plotly_chart(charts.class_balance(manifest, scan.classes), key="class_balance")
baseline = majority_baseline(scan)
if baseline is not None:
    st.markdown(
        f"A model that always answers **{md_escape(labels.get(baseline.label, baseline.label))}** would be right "
        f"**{baseline.accuracy:.0%}** of the time on the {baseline.split} split: a useful model must beat that."
    )

st.subheader("Health report")
if not scan.problems:
    st.markdown("✅ No problems found: every file is a readable image and no image appears twice.")
else:
    st.warning(
        f"{plural(len(scan.problems), 'kind')} of problem found. Bad files are left out of training "
        "(nothing is deleted)."
    )
    st.dataframe(problems_table(scan), hide_index=True, width="stretch")
st.page_link(
    "pages/5_Doctor.py",
    label="Open the Data doctor: mislabelled images, near-copies across splits, outliers",
    icon="🩺",
)

st.subheader("Examples")
per_class = st.slider("Images per class", 2, 12, 6, key="samples_per_class")
if st.button("🔀 Show other examples"):
    st.session_state["sample_seed"] = random.randrange(1 << 30)
seed = st.session_state.get("sample_seed", 0)
for cls in scan.classes:
    rows = usable[usable["class"] == cls]
    st.markdown(f"**{md_escape(labels[cls])}** · {plural(len(rows), 'image')}")
    picked = rows.sample(n=min(per_class, len(rows)), random_state=seed) if len(rows) else rows
    for col, (_, row) in zip(st.columns(per_class), picked.iterrows(), strict=False):
        col.image(
            cached.thumbnail(row["path"]),
            caption=md_escape(row["relpath"].rsplit("/", 1)[-1]),
            width="stretch",
        )

st.subheader("Image sizes")
st.markdown(charts.sizes_sentence(usable))
if charts.sizes_vary(usable):
    left, right = st.columns(2)
    left.plotly_chart(charts.image_sizes(manifest), key="sizes")
    right.plotly_chart(charts.aspect_ratios(manifest), key="aspects")

st.subheader("Augmentation preview")
st.caption(
    "What training sees when augmentation is on: random variations of one image. These settings are "
    "the ones your next training run uses (the Train page shows them too)."
)
values = forms.augmentation_fields()
if st.toggle("Show the preview", key="aug_show") and len(usable):
    first = usable.sample(n=1, random_state=seed).iloc[0]
    with st.spinner("Augmenting…"):
        grid = cached.augmentation_preview(first["path"], state.settings_config(**values), seed)
    cols = st.columns(3)
    for i, img in enumerate(grid):
        cols[i % 3].image(img, width="stretch")
