# trainkit on a CUDA PyTorch base image: `docker run --gpus all IMAGE fit --config recipes/digits_mlp.yaml`
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/trainkit
COPY pyproject.toml README.md ./
COPY trainkit ./trainkit
COPY recipes ./recipes
COPY launch ./launch
# torch comes with the base image (CUDA build); pip keeps it since it satisfies torch>=2.2
# streaming shards: LitData without its declared requirements (they are the `streaming` extra)
RUN pip install --upgrade pip && pip install ".[vision,streaming]" && pip install --no-deps "litdata==0.2.76"

WORKDIR /work
ENTRYPOINT ["trainkit"]
CMD ["--help"]
