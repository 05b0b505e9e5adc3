"""A1111's "extra networks" that change a model's weights: LoRA and its LyCORIS relatives (LoCon, LoHa, LoKr)."""
