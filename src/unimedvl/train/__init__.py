"""Knowledge level: the progressive curriculum (foundation, instruction tuning, unified) on FSDP2.

    recipes/*.yaml -> TrainConfig -> Trainer(fit) -> DCP checkpoints -> export to the released layout
"""
