"""Adapter export and Hugging Face Hub sharing for the pack's methods.

Reserved for the export/Hub work (safetensors export to plain PEFT formats, model cards, a local-Hub-tested push and
load path); nothing is exported yet. Saving and loading already work through PEFT itself:
`model.save_pretrained(dir)` and, after `import peft_designspace`, `PeftModel.from_pretrained(base, dir)`.
"""

__all__: list[str] = []
