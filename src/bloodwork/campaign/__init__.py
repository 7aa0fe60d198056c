"""The campaign: a plan of phases run as one resumable command, each phase Implement -> Evidence -> Audit -> Fix.

- `plan`: the YAML plan (phases, product commands, acceptance checks, evidence, remedies), validated.
- `state`: what has run, persisted atomically in the campaign directory so a killed campaign resumes.
- `steps`: product commands as subprocesses of the same interpreter, each command line and exit recorded.
- `baseline`: phase 0's freeze of the code, packages, machine, sandbox and which API keys exist.
- `checks`: deterministic predicates over raw files; each result names its evidence paths.
- `evidence`: figures quoted from the product's evidence files, and how each is recomputed.
- `audit`: recount every quoted figure through the product's own recount paths, then an optional LLM verdict.
- `reports`: per-phase Markdown and JSON, audit files, the handover bundle; `html`: `campaign.html`.
- `runner`: the loop over phases and attempts; `cli`: `bloodwork campaign ...`.
"""
