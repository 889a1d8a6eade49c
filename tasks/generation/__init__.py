"""Generation: k completions per instruction from a pool of models under sampled principles.

Inputs: instruction shards and the `generation` config. Outputs: completion rows (schema
"completions"). `config` validates the pool; `draws` and `principles` pick each
instruction's models and system prompts; `requests` renders them as OpenAI Batch lines;
`engines` opens a backend per engine group (registry `BACKENDS`, by serve mode); `schedule*`
plan the GPUs; `stage.run_group` runs one engine group over its shards' parts and
`stage.merge_shard` joins the parts into a shard. See docs/generation.md.
"""
