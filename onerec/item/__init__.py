"""The item side of OneRec: item vectors and semantic IDs.

encoders.py  content vectors: text (sentence-transformers), image vectors, tabular/categorical features
cache.py     content-hash cache of encoder outputs in the artifact store (incremental daily embedding)
fusion.py    collaborative fusion (OneRec-V1): InfoNCE over co-engaged item pairs + a content-keeping term
rqkmeans.py  residual k-means semantic IDs with faiss: plain or balanced, collision handling
trie.py      prefix trie of the assigned SIDs for constrained decoding, safetensors-serialized
metrics.py   code usage, entropy, cluster sizes, collisions, prefix purity, plots
history.py   find the previous finished run of a stage (frozen state for daily runs)
"""
