"""Differentiable geometric operations shared by the models: coordinates, soft-argmax, edge maps,
rotations."""
from kpray.ops.coords import expected_location, pixel_grid, soft_argmax, to_normalised, to_pixels
from kpray.ops.edge_map import edge_map, edge_map_naive, segment_distance2, upper_pairs
from kpray.ops.transforms import rotate_images, rotate_points, rotation_matrices

__all__ = ["expected_location", "pixel_grid", "soft_argmax", "to_normalised", "to_pixels",
           "edge_map", "edge_map_naive", "segment_distance2", "upper_pairs", "rotate_images",
           "rotate_points", "rotation_matrices"]
