"""max-whisper: Whisper in MAX Graph and a parity harness that proves it against openai-whisper."""
