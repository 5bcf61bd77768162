# Hugging Face Spaces (Docker SDK, Streamlit template conventions): port 8501, non-root user 1000,
# dependencies from requirements.txt only. The steps mirror a fresh virtual-environment install
# (python -m venv; pip install -r requirements.txt), so what the tests check is what the Space runs.
FROM python:3.11-slim

# libgomp: OpenMP runtime used by onnxruntime and TensorFlow's CPU kernels.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
USER user
# No FMNIST_HOME here: the workspace (projects, runs, share links, the prepared Fashion-MNIST arrays and the
# compilation cache) goes to the Space's persistent storage, /data/fmnist-home, when the Space has it, and to
# ~/.fmnist_jax otherwise, which every restart of a free Space wipes (fmnist_jax/settings.py default_home).
ENV HOME=/home/user \
    VIRTUAL_ENV=/home/user/venv \
    PATH=/home/user/venv/bin:/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=100 \
    FMNIST_PUBLIC_UPLOAD_MB=100
WORKDIR /home/user/app

COPY --chown=user requirements.txt constraints.txt ./
# JAX_EXTRA=cuda12 (or tpu) adds the accelerator build of the same JAX version, for cluster images
# (cluster/jobset.yaml); the Space leaves it empty and runs on CPU.
ARG JAX_EXTRA=""
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir -r requirements.txt -c constraints.txt \
    && if [ -n "$JAX_EXTRA" ]; then \
         pip install --no-cache-dir "jax[$JAX_EXTRA]==$(python -c 'import jax; print(jax.__version__)')"; fi

COPY --chown=user . .

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"
# XSRF protection is off in this image, as in Hugging Face's own Streamlit template. A Space page shows the app in
# a cross-site iframe, where browsers drop Streamlit's SameSite=Lax XSRF cookie, so every upload (photos, datasets,
# projects) got HTTP 403; SameSite=None needs HTTPS end to end and still fails where third-party cookies are blocked
# (Safari, Firefox strict). What it gives up: a foreign page could post a file into a visitor's open session. Here
# that session holds no login or secret: a workspace is chosen by the ?w= key in the address, never by a cookie,
# and every upload is size-capped and checked like any other. `streamlit run app.py` outside this image keeps it on.
CMD ["streamlit", "run", "app.py", "--server.port", "8501", "--server.address", "0.0.0.0", "--server.enableXsrfProtection", "false"]
