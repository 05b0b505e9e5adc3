"""ldm-serve: an HTTP server that AUTOMATIC1111 (/sdapi/v1) and OpenAI (/v1/images) clients talk to."""
