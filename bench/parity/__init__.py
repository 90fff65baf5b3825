"""The reference-parity benchmark's parts (bench/reference_parity.py runs them).

`patches` and `standin` prepare a scratch copy of the reference code; `driver` runs inside the
reference's own environment (it never imports the engine); `compare` measures the two sides.
"""
