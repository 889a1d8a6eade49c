"""Operating the pipeline on a Prefect server: work pools, concurrency limits, deployments.

`python -m deployments.bootstrap` creates the work pools and global concurrency limits of
`deployments/ops.yaml`; `python -m deployments.deploy --config RUN.yaml` registers the
scheduled pipeline, one deployment per stage and the backfill. See docs/operations.md.
"""
