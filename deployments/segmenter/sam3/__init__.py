"""The SAM 3 backend of the segmenter: backend.py (Sam3Segmenter), loading.py (weights),
encoder.py (one ViT pass → both models' features), compile.py (torch.compile of the ViT),
embedding_cache.py, embedding_codec.py (the browser payload), onnx_decoder.py (click decoder
export; its graphs in onnx_decoder_photo.py with image_state.py, onnx_decoder_fast.py, decoder_parts.py),
fp8_linear.py. Importing this package loads none of them (and no torch)."""
