"""The store, hubs and sources."""
