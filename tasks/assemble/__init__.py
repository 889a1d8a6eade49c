"""Assemble and publish: join the stages into the UltraFeedback layout, binarize into
preference pairs, and write the dataset card, the quality report and Prefect artifacts.
Entry point: tasks.assemble.publish.publish; layout and settings: docs/output.md."""
