"""Whisper in MAX Graph: module tree and names mirror openai-whisper's ``whisper/model.py``."""
