"""Fixed prompts of the reference model (UniMedVL `inferencer.py`), shared by inference and data transforms."""

VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer.\n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> "
    "answer here"
)
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in your mind, and then generate the image.\n"
    "The planning process is enclosed within <think> </think> tags; that is, <think> planning process here </think> "
    "image here.\n"
)
