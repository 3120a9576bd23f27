"""Hugging Face folder to GGUF: conversion, quantization, hostile files."""
