"""`make bench`: model-fetcher against s5cmd, rclone, boto3 and a KServe-style loop on SeaweedFS.

See bench/README.md for how to run it and how to read the table.
"""
