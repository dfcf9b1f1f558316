"""Model configs, one module per model family, apart from the Lightning modules (hdmap.models.<family>): a config
validates with pydantic alone, so planning a sweep or listing models does not import torch, Lightning or anomalib."""
