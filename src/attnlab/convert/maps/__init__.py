"""One declarative key map per model family: Hugging Face names <-> attnlab names."""
