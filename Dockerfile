# syntax=docker/dockerfile:1
#
# The image every remote step of SSOFlow runs in (AWS Batch, Kubernetes, Step Functions, Argo):
# CUDA torch 2.13 + vLLM 0.32 + this package's dependencies. See docs/cloud.md.
#
#   docker build -t sso-flow:0.1.0 .
#   docker build -t sso-flow:0.1.0 --build-arg PRELOAD_MODEL=Qwen/Qwen2.5-7B-Instruct .   # weights baked in
#
# What Metaflow needs from an image (its job command is `bash -c "... python sso_flow.py ... step X"`):
#   - `python` on PATH, and no ENTRYPOINT (Batch / Kubernetes pass the command as the container's
#     command; an ENTRYPOINT would swallow it);
#   - boto3 (the job downloads the code package from S3 with it) and requests;
#   - every dependency already installed: METAFLOW_SKIP_INSTALL_DEPENDENCIES=1 stops the job from
#     pip-installing boto3/requests at start, and @pypi/@conda are not used (they need the internet
#     at run time).
# The code itself (flows/, sso/, steps/) comes with each run's code package (@package_sources),
# so editing the code does not need a new image; changing dependencies does.
#
# The CUDA runtime comes with the torch / vLLM wheels (nvidia-* packages); the host supplies only
# the NVIDIA driver (ECS GPU-optimised AMI on Batch, the NVIDIA device plugin on Kubernetes).

FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    METAFLOW_SKIP_INSTALL_DEPENDENCIES=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/opt/hf

# gcc + libc headers: Triton (used by vLLM and torch.compile) builds small C launchers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sso-flow
COPY pyproject.toml README.md ./
COPY sso ./sso
COPY steps ./steps

# torch first and pinned (the CUDA build from PyPI), then the package with the GPU extras (vllm;
# deepspeed for strategy = "zero2" / "zero3", no prebuilt ops), pinned to the same line as the CPU
# test environment (see pyproject.toml).
RUN pip install "torch==2.13.0" \
 && DS_BUILD_OPS=0 pip install ".[vllm,deepspeed]" "boto3>=1.40" "requests>=2.31" \
 && python -c "import torch, transformers, peft, vllm, deepspeed, openai, metaflow, boto3, requests, sso, steps; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| vllm', vllm.__version__)"

# Optional: bake base-model weights into the image so GPU jobs do not download them each time.
ARG PRELOAD_MODEL=""
RUN if [ -n "$PRELOAD_MODEL" ]; then \
      python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])" "$PRELOAD_MODEL"; \
    fi

# Metaflow refuses to run as root without METAFLOW_USER (the Batch / Kubernetes job sets it to the
# launching user); run as an unprivileged user anyway, in a writable working directory.
RUN useradd --create-home --uid 1000 sso \
 && mkdir -p /opt/hf && chown -R sso:sso /opt/hf
USER sso
WORKDIR /home/sso

CMD ["python"]
