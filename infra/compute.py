"""Where algorithm containers run: AWS Batch on GPU instances, or SageMaker training jobs.

Network: one VPC with *public* subnets only, no NAT gateway and no interface endpoints.
- Batch hosts must reach ECS, ECR and CloudWatch Logs. In isolated subnets that takes six
  interface endpoints per AZ (~$88/month for two AZs, idle or not); a NAT gateway costs
  ~$32/month per AZ. Public subnets with public IPs cost nothing while no instance runs.
- Nothing can connect in: the hosts' security group has no inbound rule, and egress is HTTPS
  only. S3 traffic (inputs, outputs, image layers) takes the free S3 gateway endpoint.
- The *algorithm* has no network at all: the runner starts it in a bubblewrap sandbox with its
  own empty network namespace and moves data to and from S3 itself. The VPC cannot give that
  guarantee (the runner needs S3), so the sandbox does; SageMaker's network isolation cannot be
  used for the same reason. bwrap needs namespaces, which Docker's default seccomp profile
  forbids, and Batch offers no per-capability or seccomp switch: so the runner container is
  privileged and the runner's sandbox mode is ``required`` (a job that cannot be sandboxed
  fails instead of running with network). The algorithm keeps none of that privilege: bwrap
  drops every capability and switches to an unprivileged uid before it starts.
  ``gantry:runnerPrivileged=false`` opts out of both (docs/deploy.md, "Isolation").
- Instances require IMDSv2 with a hop limit of 1. That stops bridge-networked containers, but
  Batch runs EC2 jobs with host networking: what keeps the algorithm from IMDS (the instance
  role) and from the ECS agent (the job role, io/ prefix only) is the sandbox's lack of network.

Batch: managed EC2 compute environments that scale to zero (minvCpus 0) on the ECS AL2023
NVIDIA AMI with explicit GPU instance types only (``use_optimal_instance_classes=False``):
an on-demand environment, optionally a spot one placed first, and a CPU-only environment for
jobs that need no GPU. The GPU queue cancels jobs stuck RUNNABLE for lack of capacity or for a
requirement no instance can meet, so a job fails with a reason instead of waiting forever.

The job definition ``gantry-runner`` holds everything but the image: the image is the
algorithm's image with the runner layer appended, as the import pushed it to the repository
(docs/deploy.md "Importing an algorithm image"), so the backend registers a revision (or a
``gantry-runner-…`` definition) per algorithm image; functions that submit jobs may register
job definitions under that name and pass the two job roles.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from batch_runner.config import ENV_SANDBOX
from gantry import resources
from gantry.algorithms import MIN_MEMORY_GB
from gantry.compute.batch import CPU_DEFINITION_SUFFIX, ecs_memory_mib
from gantry.settings import Settings
from infra.access import bucket_arn_placeholder
from infra.config import GantryConfig
from infra.nag import acknowledge

RUNNER_COMMAND = (resources.RUNNER_BINARY_PATH, "invoke", "--file", "Ref::invocation")
# Job size for the default definition: a 16 GB job, which fits a g4dn.xlarge (4 vCPU, 16 GiB,
# ~15.3 GiB of which ECS can hand out). The backend overrides vCPU/memory per job.
RUNNER_VCPUS = 4
RUNNER_MEMORY = Size.mebibytes(ecs_memory_mib(16))
# CPU-only default: a whole CPU host's vCPUs (one job per host), the smallest job's memory.
CPU_RUNNER_MEMORY = Size.mebibytes(ecs_memory_mib(MIN_MEMORY_GB))
ECS_INSTANCE_POLICY_FINDING = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
    "AmazonEC2ContainerServiceforEC2Role]"
)


class Compute(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: GantryConfig,
        bucket: s3.IBucket,
        log_bucket: s3.IBucket,
        settings: Settings,
    ) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings
        removal = RemovalPolicy.DESTROY if config.destroy_on_delete else RemovalPolicy.RETAIN

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr("10.42.0.0/16"),
            availability_zones=list(config.availability_zones) or None,
            max_azs=None if config.availability_zones else 2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=20
                )
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
            restrict_default_security_group=False,
        )
        self.vpc.add_flow_log(
            "FlowLogs",
            destination=ec2.FlowLogDestination.to_s3(log_bucket, "vpc-flow-logs/"),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "HostSecurityGroup",
            vpc=self.vpc,
            description="Gantry Batch hosts: no inbound, HTTPS out (ECS, ECR, S3, logs)",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "ECS agent, ECR, S3, CloudWatch Logs"
        )

        self.repository = ecr.Repository(
            self,
            "RunnerImages",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            removal_policy=removal,
            empty_on_delete=config.destroy_on_delete,
            # Only untagged manifests expire (an import that stopped before its tag): every
            # imported image is tagged image-<pk>, and no rule matches a tagged image, so an
            # image an algorithm uses (desired or not) is only removed by deleting it.
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="untagged manifests of imports that did not finish",
                    tag_status=ecr.TagStatus.UNTAGGED,
                    max_image_age=Duration.days(7),
                )
            ],
        )

        launch_template = ec2.LaunchTemplate(
            self,
            "HostTemplate",
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
        common: dict[str, Any] = {
            "vpc": self.vpc,
            "vpc_subnets": subnets,
            "security_groups": [self.security_group],
            "launch_template": launch_template,
            "minv_cpus": 0,
            "use_optimal_instance_classes": False,
            "update_to_latest_image_version": True,
            "replace_compute_environment": False,
        }
        gpu_types = [ec2.InstanceType(t) for t in config.gpu_instance_types]
        gpu_image = [batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)]

        self.gpu_on_demand = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "GpuOnDemand",
            instance_types=gpu_types,
            images=gpu_image,
            maxv_cpus=config.gpu_max_vcpus,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            **common,
        )
        gpu_order = [
            batch.OrderedComputeEnvironment(compute_environment=self.gpu_on_demand, order=2)
        ]
        self.gpu_spot: batch.ManagedEc2EcsComputeEnvironment | None = None
        if config.spot:
            self.gpu_spot = batch.ManagedEc2EcsComputeEnvironment(
                self,
                "GpuSpot",
                spot=True,
                instance_types=gpu_types,
                images=gpu_image,
                maxv_cpus=config.gpu_max_vcpus,
                allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
                **common,
            )
            # Spot first; Batch falls through to on-demand when spot cannot place the job.
            gpu_order.insert(
                0, batch.OrderedComputeEnvironment(compute_environment=self.gpu_spot, order=1)
            )
        self.cpu = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "Cpu",
            instance_types=[ec2.InstanceType(t) for t in config.cpu_instance_types],
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023)],
            maxv_cpus=config.cpu_max_vcpus,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            **common,
        )

        self.gpu_queue = batch.JobQueue(
            self,
            "GpuQueue",
            job_queue_name=settings.batch_job_queue_gpu,
            compute_environments=gpu_order,
            job_state_time_limit_actions=self._time_limits(config),
        )
        self.cpu_queue = batch.JobQueue(
            self,
            "CpuQueue",
            job_queue_name=settings.batch_job_queue_cpu,
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=self.cpu, order=1)
            ],
            job_state_time_limit_actions=self._time_limits(config),
        )

        # --- Roles of the job itself ------------------------------------------------------
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Gantry runner inside a Batch job: may only claim its own job's data",
        )
        # No S3 grant: the runner claims credentials for its own job (infra/job_data.py).
        self.execution_role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="ECS agent for Gantry jobs: pull the runner image, write job logs",
        )
        self.repository.grant_pull(self.execution_role)
        self.job_logs = logs.LogGroup(
            self,
            "JobLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=removal,
        )
        self.job_definition = self._runner_definition(
            "RunnerDefinition", settings.batch_job_definition, config, gpus=1
        )
        # Jobs on the CPU queue need a definition without a GPU requirement (an override can
        # change the GPU count but not drop the requirement).
        self.cpu_job_definition = self._runner_definition(
            "CpuRunnerDefinition", self.cpu_job_definition_name, config, gpus=0
        )

        # --- SageMaker backend ------------------------------------------------------------
        self.sagemaker_role = iam.Role(
            self,
            "SageMakerRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="Gantry runner as a SageMaker training job: image, logs, its artifacts",
        )
        # Not io/: the runner claims credentials for its own job (infra/job_data.py). SageMaker
        # itself uploads the (empty) model artifacts under sagemaker-output/, read by nobody.
        self.sagemaker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(f"{resources.PREFIX_SAGEMAKER_OUTPUT}*")],
            )
        )
        acknowledge(
            self.sagemaker_role,
            f"AwsSolutions-IAM5[Resource::{bucket_arn_placeholder(bucket)}/"
            f"{resources.PREFIX_SAGEMAKER_OUTPUT}*]",
            "SageMaker names each training job's artifact keys at runtime; write-only, and "
            "nothing reads that prefix.",
        )
        self.repository.grant_pull(self.sagemaker_role)
        stack = Stack.of(self)
        self.sagemaker_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/TrainingJobs:*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        self.sagemaker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={
                    "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}
                },
            )
        )
        self._acknowledge()

    @property
    def cpu_job_definition_name(self) -> str:
        return f"{self._settings.batch_job_definition}{CPU_DEFINITION_SUFFIX}"

    def _runner_definition(
        self, construct_id: str, name: str, config: GantryConfig, *, gpus: int
    ) -> batch.EcsJobDefinition:
        return batch.EcsJobDefinition(
            self,
            construct_id,
            job_definition_name=name,
            container=batch.EcsEc2ContainerDefinition(
                self,
                f"{construct_id}Container",
                image=ecs.ContainerImage.from_registry(config.runner_placeholder_image),
                cpu=RUNNER_VCPUS if gpus else config.cpu_host_vcpus,
                memory=RUNNER_MEMORY if gpus else CPU_RUNNER_MEMORY,
                gpu=gpus or None,
                # Batch offers no per-capability switch; privileged is the only way to let the
                # runner's bubblewrap sandbox create namespaces under Docker's seccomp profile.
                privileged=config.runner_privileged,
                # Copied into every per-image definition by the Batch backend; the runner
                # removes GANTRY_* before the algorithm starts.
                # The runner calls the credentials function and S3 in its own region.
                environment={ENV_SANDBOX: config.runner_sandbox, "AWS_REGION": Aws.REGION},
                command=list(RUNNER_COMMAND),
                job_role=self.job_role,
                execution_role=self.execution_role,
                logging=ecs.LogDriver.aws_logs(stream_prefix="runner", log_group=self.job_logs),
            ),
            # No Batch retries: the platform owns them. A host failure ends the attempt and
            # the job callback starts a new one (a new io/ prefix, counted against
            # max_attempts), so a job runs at most max_attempts times, not 3 x that.
            timeout=Duration.minutes(config.job_timeout_minutes),
            propagate_tags=True,
        )

    @staticmethod
    def _time_limits(config: GantryConfig) -> list[batch.JobStateTimeLimitAction]:
        capacity = Duration.minutes(config.capacity_wait_minutes)
        misconfigured = Duration.minutes(config.misconfiguration_wait_minutes)
        reasons = batch.JobStateTimeLimitActionsReason
        return [
            batch.JobStateTimeLimitAction(
                max_time=capacity,
                reason=reasons.INSUFFICIENT_INSTANCE_CAPACITY,
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
            ),
            batch.JobStateTimeLimitAction(
                max_time=misconfigured,
                reason=reasons.COMPUTE_ENVIRONMENT_MAX_RESOURCE,
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
            ),
            batch.JobStateTimeLimitAction(
                max_time=misconfigured,
                reason=reasons.JOB_RESOURCE_REQUIREMENT,
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
            ),
        ]

    # --- Who may start and stop compute jobs ----------------------------------------------
    def control_statements(self) -> list[iam.PolicyStatement]:
        """Submit, inspect, cancel Gantry's Batch jobs and SageMaker training jobs."""
        stack = Stack.of(self)
        prefix = resources.COMPUTE_JOB_NAME_PREFIX
        definitions = stack.format_arn(
            service="batch",
            resource="job-definition",
            resource_name=f"{self._settings.batch_job_definition}*",
        )
        queues = [self.gpu_queue.job_queue_arn, self.cpu_queue.job_queue_arn]
        jobs = stack.format_arn(service="batch", resource="job", resource_name="*")
        training_jobs = stack.format_arn(
            service="sagemaker", resource="training-job", resource_name=f"{prefix}*"
        )
        return [
            iam.PolicyStatement(actions=["batch:SubmitJob"], resources=[*queues, definitions]),
            # Registering with tags (tag-on-create) is authorised as TagResource on the new
            # definition, as submitting with tags is on the new job.
            iam.PolicyStatement(
                actions=[
                    "batch:RegisterJobDefinition",
                    "batch:DeregisterJobDefinition",
                    "batch:TagResource",
                ],
                resources=[definitions],
            ),
            iam.PolicyStatement(
                actions=["batch:TerminateJob", "batch:CancelJob", "batch:TagResource"],
                resources=[jobs],
            ),
            # DescribeJobs, ListJobs and DescribeJobDefinitions support no resource-level
            # permissions; the backend looks up each image's definition before submitting.
            iam.PolicyStatement(
                actions=["batch:DescribeJobs", "batch:ListJobs", "batch:DescribeJobDefinitions"],
                resources=["*"],
            ),
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.job_role.role_arn, self.execution_role.role_arn],
            ),
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                resources=[training_jobs],
            ),
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.sagemaker_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            ),
        ]

    def acknowledge_control(self, scope: Construct) -> None:
        """The wildcards in ``control_statements`` and why they cannot be narrower."""
        arn = "arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}"
        prefix = resources.COMPUTE_JOB_NAME_PREFIX
        findings = {
            arn.format(service="batch", resource="job/*"): "Batch job ids are generated at "
            "submit time; TerminateJob/CancelJob/TagResource cannot name them in advance.",
            arn.format(
                service="batch", resource=f"job-definition/{self._settings.batch_job_definition}*"
            ): "Revisions of the runner job definition (one per algorithm image) are created "
            "(and tagged) at runtime; the wildcard covers only names starting with the "
            "runner's name.",
            arn.format(service="sagemaker", resource=f"training-job/{prefix}*"): "Training "
            "jobs are named per job at runtime; only names with Gantry's prefix are allowed.",
            "*": "batch:DescribeJobs, batch:ListJobs and batch:DescribeJobDefinitions support no "
            "resource-level permissions.",
        }
        for resource, reason in findings.items():
            acknowledge(scope, f"AwsSolutions-IAM5[Resource::{resource}]", reason)

    def _acknowledge(self) -> None:
        acknowledge(
            self.execution_role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions; image pulls "
            "themselves are limited to the runner repository.",
        )
        acknowledge(
            self.sagemaker_role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken and cloudwatch:PutMetricData have no resource-level "
            "permissions; PutMetricData is limited to SageMaker's namespace by condition.",
        )
        acknowledge(
            self.sagemaker_role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
            "<AWS::AccountId>:log-group:/aws/sagemaker/TrainingJobs:*]",
            "SageMaker writes one log stream per training job into its fixed log group; "
            "streams are named at runtime.",
        )
        for env in filter(None, (self.gpu_on_demand, self.gpu_spot, self.cpu)):
            acknowledge(
                env,
                ECS_INSTANCE_POLICY_FINDING,
                "The standard ECS instance policy: the ECS agent on Batch hosts needs it "
                "to register with the cluster; jobs get their own narrower job role.",
            )
