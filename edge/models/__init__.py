"""Models on disk and on hubs: the store, what a MODEL argument means, pulls, sources."""
