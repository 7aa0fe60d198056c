"""Training data from what really happened: pools mined from verified journals, forks for same-prompt
preference pairs, TRL-format files with a manifest, and LoRA training on them.

Layering: `data` sits beside `evidence` above the kernel; it reads run files and drives the kernel only
to rebuild and branch runs (`fork`). Nothing below it imports it.
"""
