# The hosted demo in a container; mirrors the README's install command. Build and run:
#   docker build -t studio . && docker run -p 8501:8501 studio
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Run as a user who can write only runs and caches: the app code and the demo model stay read-only.
RUN useradd --create-home studio && mkdir -p models .cache && chown -R studio models .cache
USER studio
# MALLOC_MMAP_THRESHOLD_: freed image buffers go back to the system at once (lib/data/images.py).
ENV STUDIO_HOSTED=1 STREAMLIT_SERVER_MAX_UPLOAD_SIZE=200 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    MALLOC_MMAP_THRESHOLD_=8388608
EXPOSE 8501
CMD ["streamlit", "run", "streamlit_app.py", "--server.address", "0.0.0.0", "--server.port", "8501"]
