"""The decode stage: an object's bytes -> ``image.DecodedImage`` (a 2-D greyscale array in the original's pixel
grid, with its metadata), or a typed ``image.ImageDecodeError`` carrying a short reason. ``reader.decode_image`` is
the entry point; ``dicom``, ``codecs``, ``voi`` and ``gpu`` read DICOM; ``spacing`` resolves the pixel spacing."""
