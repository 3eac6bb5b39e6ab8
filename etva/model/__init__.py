"""ETVA model: text encoder, video experts + fusion, global and fine-grained (NetVLAD) alignment."""

from etva.model.etva import ALIGNMENTS, ETVA, TextEmbedding, VideoEmbedding, build_model
from etva.model.netvlad import netvlad

__all__ = ["ETVA", "TextEmbedding", "VideoEmbedding", "build_model", "netvlad", "ALIGNMENTS"]
