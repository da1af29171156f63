"""The S3 side: listing, HEAD, the manifest GET, presigned GET URLs and publish's uploads.

`base` holds the typed answers (RemoteObject, ObjectHead) and the ControlPlane protocol;
`sigv4` (SigV4 over urllib, for static keys) and `boto` (aiobotocore, botocore's credential
chain) implement it; `factory` picks one; `s3errors` maps S3's error codes and bodies. Every
botocore, urllib and socket error is mapped into `fetcher.errors` here, at the boundary.
"""
