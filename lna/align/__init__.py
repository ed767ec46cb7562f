"""lna-align: the study's MAPO alignment (docs/method.md, "Alignment") in four resumable stages.

    sample.  n responses per question in each aligned language and the pivot (pipeline.py)
    score.   NLLB alignment score of each non-pivot response against the pivot ones (score.py)
    pairs.   preference pairs and their dev split, as the released extraction (pairs.py)
    train.   DPO with LoRA through TRL + PEFT, merged checkpoints on the way (train.py, lora_merge.py)

Released scripts followed (and where lna differs) are named in each module. TRL, PEFT and
`datasets` come with the extra `lna[align]` and are imported by the train stage only.
"""

STAGE_FIX = "delete it to redo the stage"  # what to do about a damaged stage file
