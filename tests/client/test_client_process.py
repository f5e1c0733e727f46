"""The SDK against a real `icseg serve` process on a loopback port: PNG, a NIfTI job with progress, prompts."""

from __future__ import annotations

import numpy as np
import pytest
from icseg_client import AuthenticationError, Client, NotFoundError
from testkit.fixtures import API_KEY
from testkit.inputs import AFFINE, ball_volume, disk_pair, save_nifti, save_png


def test_sdk_against_a_real_server(server, tmp_path, rng, monkeypatch, capsys):
    query, _ = disk_pair(rng, size=(70, 50), labels=(1, 2))
    pairs = [disk_pair(rng, labels=(1, 2)) for _ in range(3)]
    images = [save_png(p[0], tmp_path / f"i{i}.png") for i, p in enumerate(pairs)]
    masks = [save_png(p[1], tmp_path / f"m{i}.png") for i, p in enumerate(pairs)]
    query_path = save_png(query, tmp_path / "q.png")
    with pytest.raises(AuthenticationError):
        Client(server.url).segment(query_path, images, masks)

    monkeypatch.setenv("ICSEG_URL", server.url)
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    with Client(timeout=60) as client:
        assert client.ready() and client.info()["network"]["size"] == 32
        result = client.segment(query_path, images, masks)
        assert result.shape == (70, 50) and result.labels == [1, 2]
        np.testing.assert_array_equal(client.segment(query, [p[0] for p in pairs], [p[1] for p in pairs]).mask,
                                      result.mask)

        prompt = client.create_prompt(images, masks, name="process")
        assert prompt.id in [p.id for p in client.list_prompts()]
        np.testing.assert_array_equal(client.segment(query_path, prompt=prompt).mask, result.mask)

        volume, _ = ball_volume(rng, (24, 20, 14))
        support = [ball_volume(rng, (20, 20, 10)) for _ in range(2)]
        volume_path = save_nifti(volume, tmp_path / "v.nii.gz")
        seen = []
        job = client.segment_volume(volume_path, [save_nifti(v, tmp_path / f"sv{i}.nii.gz") for i, (v, _) in
                                                  enumerate(support)], [m for _, m in support],
                                    progress=lambda done, total: seen.append((done, total)))
        assert job.shape == volume.shape and seen[-1] == (14, 14)
        np.testing.assert_allclose(job.affine, AFFINE)
        with_prompt = client.segment_volume(volume_path, prompt=prompt, progress=True)
        assert with_prompt.shape == volume.shape and with_prompt.labels == [1, 2]
        assert "segment_volume" in capsys.readouterr().err

        client.delete_prompt(prompt.id)
        with pytest.raises(NotFoundError):
            client.segment(query_path, prompt=prompt.id)
