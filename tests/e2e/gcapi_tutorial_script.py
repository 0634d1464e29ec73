# ruff: noqa
"""grand-challenge's "Using the API for algorithms" tutorial, its code blocks as written (line
breaks restored), for the gcapi releases that have ``run_external_job`` with dict results
(0.5 to 0.12). Run by tests/e2e/test_gcapi_tutorial.py with an old release's Python, in a
folder holding io/case01.mha and io/case02.mha; it writes what it did to summary.json.

Substituted, and nothing else: the personal token and grand-challenge's URL by the local
stack's (GANTRY_TOKEN, GANTRY_API_URL) and its CA (GANTRY_CA, passed as ``verify``). The
slugs and names are the tutorial's own: the test creates algorithms, interfaces and an
archive with them. Between sections the harness waits for the jobs to end, where the
tutorial says "After all of your jobs have ended".
"""

# fmt: off
import json
import os
import time

API_URL = os.environ["GANTRY_API_URL"]
GC_URL = "https://grand-challenge.org/api/v1/"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def until_ended(client, jobs):
    """Harness: the tutorial waits for the jobs by hand."""
    deadline = time.monotonic() + float(os.environ.get("GANTRY_JOB_TIMEOUT", "180"))
    while True:
        jobs = [client.algorithm_jobs.detail(job["pk"]) for job in jobs]
        if all(job["status"] in TERMINAL for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def substitute_url(url):
    return url.replace(GC_URL, API_URL)


summary = {}

# --- "Import necessary libraries" -------------------------------------------------------------
import gcapi  # noqa: E402
from pathlib import Path  # noqa: E402
from tqdm import tqdm  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import numpy as np  # noqa: E402

# --- "Authenticate to Grand Challenge using your personal API token." ---------------------------
# authorise with your personal token
my_personal_gcapi_token = os.environ["GANTRY_TOKEN"]
client = gcapi.Client(
    token=my_personal_gcapi_token, base_url=API_URL, verify=os.environ["GANTRY_CA"]
)

# --- "Upload input to an algorithm for inference" ---------------------------------------------
# retrieve the algorithm, providing a slug
algorithm_1 = client.algorithms.detail(slug="pulmonary-lobe-segmentation")
# explore, which input the algorithm expects
algorithm_1["inputs"]
summary["algorithm_1_inputs"] = [i["slug"] for i in algorithm_1["inputs"]]

# get the path to the files
files = ["io/case01.mha", "io/case02.mha"]
#timeout
jobs = []
# submit a job for each file in your file list
for file in files:
    job = client.run_external_job(
        algorithm="pulmonary-lobe-segmentation",
        inputs={
            "generic-medical-image": [Path(file)]
        }
    )
    jobs.append(job)

jobs = [client.algorithm_jobs.detail(job["pk"]) for job in jobs]
print([job["status"] for job in jobs])

jobs = until_ended(client, jobs)
summary["section_1_statuses"] = [job["status"] for job in jobs]

# --- "Download inference results from an algorithm" -------------------------------------------
# loop through input files
for job, input_fname in tqdm(zip(jobs, files)):
    # loop through job outputs
    for output in job["outputs"]:
        # check whether if output exists
        if output["image"] is not None:
            # get image details
            image_details = client(url=output["image"])
            for file in image_details["files"]:
                # create the output filename
                output_file = Path(input_fname.replace(".mha", "_lobes.mha"))
                if output_file.suffix != ".mha":
                    raise ValueError("Output file needs to have .mha extension")
                output_file.parent.mkdir(parents=True, exist_ok=True)
                with output_file.open("wb") as fp:
                    # get the image from url and write it
                    response = client(
                        url=file["file"], follow_redirects=True
                    ).content
                    fp.write(response)

# --- "Upload multiple inputs to an algorithm for inference" -----------------------------------
# provide paths of the lobe segmentations
lobes = [
    "io/case01_lobes.mha",
    "io/case02_lobes.mha",
]
#loop through the files
for lobe_file in lobes:
    #read image with sitk
    lobe = sitk.ReadImage(lobe_file)
    origin = lobe.GetOrigin()
    spacing = lobe.GetSpacing()
    direction = lobe.GetDirection()
    lobe = sitk.GetArrayFromImage(lobe)
    # binarize
    lobe[lobe >= 1] = 1
    lungs = lobe.astype(np.uint8)
    lungs = sitk.GetImageFromArray(lungs)
    lungs.SetOrigin(origin)
    lungs.SetSpacing(spacing)
    lungs.SetDirection(direction)
    # write the modified image back into file
    sitk.WriteImage(lungs, lobe_file.replace("_lobes", "_lungs"), True)

# retrieve the algorithm
algorithm_2 = client.algorithms.detail(
    slug="deep-learning-based-ct-lung-registration")
# as a reminder, you can inspect the algorithm object
# to understand what kind of inputs it requires
algorithm_2["inputs"]
summary["algorithm_2_inputs"] = sorted(i["slug"] for i in algorithm_2["inputs"])

# create a job
registration_job = client.run_external_job(
    algorithm="deep-learning-based-ct-lung-registration",
    inputs={
        "fixed-image": [Path("io/case01.mha")],
        "moving-image": [Path("io/case02.mha")],
        "fixed-mask": [Path("io/case01_lungs.mha")],
        "moving-mask": [Path("io/case02_lungs.mha")],
    }
)

registration_job = client.algorithm_jobs.detail(registration_job["pk"])
registration_job["status"]

(registration_job,) = until_ended(client, [registration_job])
summary["section_2_status"] = registration_job["status"]

# loop through the outputs
for output in registration_job["outputs"]:
    # get image details
    image_details = client(url=output["image"])
    output_slug = output["interface"]["slug"]
    for file in image_details["files"]:
        output_file = Path(f"{output_slug}.mha")
        output_file.parent.mkdir(parents=True, exist_ok=True)
        with output_file.open("wb") as fp:
            fp.write(client(url=file["file"], follow_redirects=True).content)

# --- "Download the results of an algorithm that produces multiple outputs" --------------------
# retrieve the algorithm, providing a slug
algorithm_4 = client.algorithms.detail(
    slug="pulmonary-lobe-segmentation-for-covid-19-ct-scans")
# explore which inputs the algorithm expects
algorithm_4["inputs"]

#name of the archive
archive_name = "coronacases.org"
#save path on your machine
output_archive_dir = 'output_scans'
outputarchivedir_screenshots = 'output_screenshots'
archives = client(url=substitute_url("https://grand-challenge.org/api/v1/archives/"))["results"]
corona_archive = None
for archive in archives:
    if archive["name"] == archive_name:
        corona_archive = archive
        break
if corona_archive is None:
    raise Exception("archive not found on GC")
# extract image urls
params = {
    'archive': corona_archive["pk"],
}
response = client(url=substitute_url("https://grand-challenge.org/api/v1/cases/images/"), params=params)
urls=[]
for r in response['results']:
    urls.append(r['api_url'])

jobs = []
# submit a job for each file in your file list
for url in urls[:2]:
    job = client.run_external_job(
        algorithm="pulmonary-lobe-segmentation-for-covid-19-ct-scans",
        inputs={
            "ct-image": url
        }
    )
    jobs.append(job)

jobs = [client.algorithm_jobs.detail(job["pk"]) for job in jobs]
print([job["status"] for job in jobs])

jobs = until_ended(client, jobs)
summary["section_3_statuses"] = [job["status"] for job in jobs]
summary["section_3_inputs"] = urls[:2]

# get algorithm providing the slug
algorithm = "pulmonary-lobe-segmentation-for-covid-19-ct-scans"
algorithm_details = client(path="algorithms/", params={"slug": algorithm})
# extract details
algorithm_details = algorithm_details["results"][0]
algorithm_uuid = algorithm_details["pk"]
# Define dictionaries for image uuid mappings
images_mapping = {}
images_mapping_scans = {}
# get the desired archive
archives = client(url=substitute_url("https://grand-challenge.org/api/v1/archives/"))["results"]
archive_name = 'coronacases.org'
target_archive = None
# loop through archives and select the one with a name that you are looking for
# (e.g., 'coronacases.org')
for archive in archives:
    if archive["name"] == archive_name:
        target_archive = archive
        break

# get uuids in archive
done = False
iteration = 0
image_uuids = []
# create a mapping between image uuids and input names
while not done:
    iteration += 1
    if iteration == 1:
        # get information about images in archive from GC API
        params = {'archive': target_archive['id']}
        response = client(url=substitute_url("https://grand-challenge.org/api/v1/cases/images/"), params=params)
    else:
        # get information about images on next page
        response = client(url=response["next"])
    images = response['results']
    for image in images:
        # create a mapping for image uuids
        uuid = image['pk']
        images_mapping[uuid] = image['name'] + "_" + uuid
        images_mapping_scans[uuid] = image['name']
        image_uuids += [uuid]
    if response["next"] is None:
        # stop if no next page left
        done = True

# get algorithm results for the image
output_image_files = []
screenshot_files = []
counter = 0
# loop through uuid
for image_uuid in image_uuids:
    params = {'algorithm_image__algorithm': algorithm_uuid, 'input_image': image_uuid}
    # get the jobs details corresponding to a particular uuid and algorithm
    results = client.algorithm_jobs.iterate_all(params)
    #iterate through the results
    for result in results:
        counter += 1
        #iterate through the outputs
        for output in result['outputs']:
            # here we go over different interfaces and write the corresponding output
            if output["interface"]["slug"] == "pulmonary-lobes":
                image = client(url=output['image'])
                for file in image["files"]:
                    if file['image_type'] == "MHD":
                        new_file = file['file'] #image['files'][0]['file']
                        output_image_files += [new_file]
                        dest_path_mha = Path(
                            output_archive_dir, images_mapping_scans[image_uuid]
                        )
                        with open(dest_path_mha, 'wb') as f1:
                            response_1 = client(url=new_file, follow_redirects=True)
                            f1.write(response_1.content)
            if output["interface"]["slug"] == "pulmonary-lobes-screenshot":
                image = client(url=output['image'])
                for file in image["files"]:
                    if file['image_type'] == "TIFF":
                        new_file = file['file']
                        screenshot_files += [new_file]
                        dest_path = Path(
                            outputarchivedir_screenshots, images_mapping[image_uuid]
                        ).with_suffix('.tif')
                        with open(dest_path, 'wb') as f1:
                            response_2 = client(url=new_file, follow_redirects=True)
                            f1.write(response_2.content)

summary["section_4_counter"] = counter
summary["section_4_mapping"] = images_mapping_scans
summary["output_image_files"] = output_image_files
summary["screenshot_files"] = screenshot_files
Path("summary.json").write_text(json.dumps(summary, indent=1))
