"""Compute: what happens to a request once the edge has read and validated it.

- ``inputs``: decoding images and pixel arrays into the model's input (on the event loop or the
  decode pool);
- ``pool``: bounded thread pools (decode, attack probes) that answer 503 when full;
- ``engine``: the loaded model, its prediction job and the micro-batcher it feeds;
- ``batcher``: the micro-batcher (one compute thread, batches of waiting requests);
- ``backends``: torch and onnxruntime, on CPU or GPU.

Nothing here imports ``service.edge``.
"""
