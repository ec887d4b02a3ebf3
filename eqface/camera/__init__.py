"""The camera client: faces found in a video (file, camera device or RTSP), aligned to the ArcFace template, tracked
across frames and streamed to the aggregation service as one subject per track (``eqface stream``)."""
