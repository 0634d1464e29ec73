"""File downloads: the API answers on its own host and redirects to a short-lived S3 URL."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response

from gantry.context import Context


def redirect_to_object(ctx: Context, key: str, filename: str) -> Response:
    url = ctx.clients.s3_presign.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": ctx.settings.bucket_name,
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        },
        ExpiresIn=ctx.settings.presigned_url_seconds,
    )
    return Response(
        status_code=302,
        content_type="application/json",
        body="",
        headers={"Location": url, "Cache-Control": "no-store"},
    )
