"""Generation: a request, its result, the txt2img steps, and the Pipeline facade over them."""
