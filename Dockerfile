# trainkit with the torch the project pins and tests (Makefile: TORCH_SPEC), CUDA included:
#
#   docker build -t trainkit .
#   docker run --gpus all -v "$PWD/runs:/work/runs" trainkit fit --config recipes/digits_mlp.yaml
#
# The image's working directory /work holds the shipped recipes (recipes/); runs are written
# to /work/runs, so mount a host directory there to keep them. Your own recipe: mount it too
# (-v "$PWD/my.yaml:/work/my.yaml") and pass --config my.yaml. The launch scripts are in the
# installed package (`trainkit launch` renders them; launch/ in the repo links to them).
#
# torch comes from PyPI, whose Linux wheels bundle the CUDA libraries (the NVIDIA driver
# comes from the host through --gpus); torchvision is pinned to the build made for that torch,
# in the same pip call, so pip does not replace torch with a newer one for the vision extra.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
# streaming shards (data.dataset: streaming): LitData without its declared requirements, which
# would pull torchvision and a second torch; its real ones are the `streaming` extra
ARG LITDATA_VERSION=0.2.76

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/trainkit
COPY pyproject.toml README.md ./
COPY trainkit ./trainkit
RUN pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ".[vision,streaming]" \
    && pip install --no-deps "litdata==${LITDATA_VERSION}"

WORKDIR /work
COPY recipes ./recipes
ENTRYPOINT ["trainkit"]
CMD ["--help"]
