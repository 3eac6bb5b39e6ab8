"""Evaluation: scoring an encoded split (scoring), all-pairs similarity in blocks (similarity), R@K / MdR and
the selection rule (metrics)."""
