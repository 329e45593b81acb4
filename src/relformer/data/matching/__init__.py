"""Matching data: offline photos with a fixed train/val/test split, random homographies with exact
ground truth (training and held-out pairs), and real pairs with ground truth (graf, aloe, motorcycle)."""
from .homography import (DEFAULT_SIZE, HELDOUT_LENGTH, HELDOUT_SEED, HomographyConfig, HomographyPairs,
                         PhotometricConfig, correspondence_map, heldout_pairs, make_pair, photometric_augment,
                         sample_view, warp_image, warp_points)
from .pairs import (OPENCV_DATA_FILES, STEREO_PAIRS, HomographyPair, StereoPair, load_aloe, load_graf,
                    load_motorcycle, opencv_data_dir)
from .photos import PHOTOS, TEST_PHOTOS, TRAIN_PHOTOS, VAL_PHOTOS, load_photo, photo_split

__all__ = ["DEFAULT_SIZE", "HELDOUT_LENGTH", "HELDOUT_SEED", "HomographyConfig", "HomographyPairs",
           "PhotometricConfig", "correspondence_map", "heldout_pairs", "make_pair", "photometric_augment",
           "sample_view", "warp_image", "warp_points", "OPENCV_DATA_FILES", "STEREO_PAIRS", "HomographyPair",
           "StereoPair", "load_aloe", "load_graf", "load_motorcycle", "opencv_data_dir", "PHOTOS", "TEST_PHOTOS",
           "TRAIN_PHOTOS", "VAL_PHOTOS", "load_photo", "photo_split"]
