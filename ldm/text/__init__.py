"""Text to conditioning: the CLIP BPE tokenizer, and prompts -> the context the U-Net attends to."""
