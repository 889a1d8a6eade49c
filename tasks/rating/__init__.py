"""Rating: the judge's four aspect ratings and critique of every completion.

Inputs: instruction and completion shards and the `rating` config. Outputs: rating rows
(schema "ratings"). `prompts`/`rubrics` render the UltraFeedback judge prompts, `protocol`
is their wire contract, `parse` reads answers (an unreadable one is data, not an error),
`judges` opens a judge backend by endpoint mode and kind (registry `JUDGES`), `scripted` and
`scripted_faults` are the in-process judges of tests and demos, `cost` prices calls, and
`stage.rate_shard` rates one shard. See docs/rating.md.
"""
