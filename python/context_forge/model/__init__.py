"""Llama-family model runner: configs, weight loading, tokenizers."""
from context_forge.model.config import ModelConfig
from context_forge.model.loader import load_model
from context_forge.model.registry import get_model_class, supported_architectures
from context_forge.model.tokenizer import (
    ByteTokenizer, HFTokenizer, IncrementalDetokenizer, Tokenizer, get_tokenizer)

__all__ = ["ByteTokenizer", "HFTokenizer", "IncrementalDetokenizer", "ModelConfig", "Tokenizer",
           "get_model_class", "get_tokenizer", "load_model", "supported_architectures"]
