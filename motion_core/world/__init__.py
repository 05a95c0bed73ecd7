"""A small world with ground truth, for seeing what the method does without SD1.5 weights.

A client of the engine (as a user's SD1.5 is), never a dependency of it: ``scene`` draws scenes,
people, motions, clips and edit cases with their ground-truth edit; ``vae`` is its fixed latent
mapping; ``text`` its word-level text encoder; ``model`` the trained base model (UNet + ControlNet +
text encoder, diffusers classes as SD1.5); ``train`` retrains it; ``metrics`` scores edits against the
truth; ``pipeline`` runs the method's variants on an edit case.
"""
