"""The one generation loop end to end through llama.cpp with scripted models."""
