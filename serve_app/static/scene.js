// The 3D view on three.js (WebGL2): streamed voxels as one InstancedMesh updated in place per frame,
// the mesh preview, the final GLB (GLTFLoader with the meshopt decoder, for EXT_meshopt_compression
// files) and the Gaussian splats (Spark). One of the four is shown at a time; orbit controls,
// a hemisphere + key light that show the shape, and a ground grid under the object.
//
// World space is the reconstruction's unit cube [-0.5, 0.5]³ with x right, y up and +z towards the
// camera that took the photo, for voxels, mesh preview, GLB and splats alike. The home view looks
// from +z (a little above and to the side), so the first view faces the object as the photo did.

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { MeshoptDecoder } from "three/addons/libs/meshopt_decoder.module.js";
import { base64ToBytes } from "./voxel-codec.js";

export const VIEWS = ["voxels", "mesh", "glb", "splats"];
const BACKGROUND = 0x1d2129;
const NEUTRAL = [188, 196, 210]; // geometry frames (no colours yet): a light grey-blue clay
const HOME_DIR = new THREE.Vector3(0.22, 0.28, 1).normalize();
const FOV = 40;
const RENDER_AFTER_CHANGE_MS = 1200; // keep drawing this long after a change (Spark sorts asynchronously)

/** sRGB byte → linear float, for instance and vertex colours (three works in linear space). */
const SRGB_TO_LINEAR = Float32Array.from({ length: 256 }, (_, i) => {
  const c = i / 255;
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
});

function triangles(object) {
  let n = 0;
  object.traverse((o) => {
    if (!o.isMesh) return;
    const g = o.geometry;
    n += (g.index ? g.index.count : g.attributes.position.count) / 3;
  });
  return n;
}

export class Scene {
  /** `canvas`: the element to draw into; it is resized to its CSS box. */
  constructor(canvas) {
    this.canvas = canvas;
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: true, powerPreference: "high-performance" });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(BACKGROUND);
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(FOV, 1, 0.01, 100);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.addEventListener("change", () => this.invalidate());
    this.controls.addEventListener("start", () => { this.touched = true; });
    this.scene.add(new THREE.HemisphereLight(0xf2f5ff, 0x3a3328, 1.6));
    const key = new THREE.DirectionalLight(0xffffff, 1.8);
    key.position.set(1.5, 2.5, 2.5);
    this.scene.add(key);
    this.grid = new THREE.GridHelper(2, 20, 0x59606e, 0x3a404c);
    this.grid.position.y = -0.5;
    this.scene.add(this.grid);

    this.groups = Object.fromEntries(VIEWS.map((v) => {
      const g = new THREE.Group();
      g.name = v;
      this.scene.add(g);
      return [v, g];
    }));
    this.view = "voxels";
    this.voxelGeometry = new THREE.BoxGeometry(1, 1, 1);
    this.voxelMaterial = new THREE.MeshStandardMaterial({ roughness: 0.85, metalness: 0 });
    this.voxels = null; // the InstancedMesh; reallocated (doubling) only when a frame outgrows it
    this.info = { voxelCount: 0, voxelFrames: 0, meshTriangles: 0, glbTriangles: 0, splats: 0 };
    this.fitted = new Set();
    this.touched = false;
    this._renderUntil = 0;
    this._spark = null;

    this.glbLoader = new GLTFLoader().setMeshoptDecoder(MeshoptDecoder);
    new ResizeObserver(() => this._resize()).observe(canvas);
    this._resize();
    this.home();
    this.renderer.setAnimationLoop(() => {
      if (performance.now() < this._renderUntil) this.render();
    });
  }

  invalidate() {
    this._renderUntil = performance.now() + RENDER_AFTER_CHANGE_MS;
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }

  _resize() {
    const w = Math.max(1, this.canvas.clientWidth);
    const h = Math.max(1, this.canvas.clientHeight);
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.invalidate();
  }

  /** Forget the last run's objects (keeps the allocated voxel buffers). */
  reset() {
    for (const v of ["mesh", "glb", "splats"]) this._clear(v);
    if (this.voxels) this.voxels.count = 0;
    Object.assign(this.info, { voxelCount: 0, voxelFrames: 0, meshTriangles: 0, glbTriangles: 0, splats: 0 });
    this.fitted.clear();
    this.touched = false;
    this.show("voxels");
  }

  _clear(view) {
    const g = this.groups[view];
    for (const child of [...g.children]) {
      g.remove(child);
      child.traverse((o) => {
        if (o.geometry) o.geometry.dispose();
        if (o.material) [].concat(o.material).forEach((m) => m.dispose());
      });
      if (typeof child.dispose === "function") child.dispose(); // a SplatMesh frees its textures
    }
  }

  show(view) {
    this.view = view;
    for (const v of VIEWS) this.groups[v].visible = v === view;
    if (!this.fitted.has(view) && this.has(view)) this.fit(view);
    this.invalidate();
  }

  has(view) {
    if (view === "voxels") return this.info.voxelCount > 0;
    return this.groups[view].children.length > 0;
  }

  /** Frame `view`'s object from the home direction, unless the person has orbited already. */
  fit(view, box = null) {
    const b = box || new THREE.Box3().setFromObject(this.groups[view]);
    if (b.isEmpty()) return;
    this.fitted.add(view);
    const center = b.getCenter(new THREE.Vector3());
    const size = b.getSize(new THREE.Vector3());
    // Frame as if the object were as deep as it is wide: the silhouette comes first and the
    // object swells in z while it streams, so the view does not zoom while it grows.
    const radius = 0.5 * Math.hypot(size.x, size.y, Math.max(size.x, size.y, size.z));
    this.grid.position.y = b.min.y;
    this.home(center, radius);
  }

  home(center = new THREE.Vector3(), radius = 0.5) {
    const fov = THREE.MathUtils.degToRad(this.camera.fov);
    const fit = Math.min(fov, 2 * Math.atan(Math.tan(fov / 2) * this.camera.aspect));
    const distance = (1.08 * radius) / Math.sin(fit / 2);
    this.controls.target.copy(center);
    this.camera.position.copy(center).addScaledVector(HOME_DIR, distance);
    this.camera.near = distance / 100;
    this.camera.far = distance * 100;
    this.camera.updateProjectionMatrix();
    this.controls.update();
    this.invalidate();
  }

  /**
   * One voxel frame: `coords` [x0,y0,z0, ...] in grid units of an n³ grid, `colors` RGB bytes per
   * voxel or null. Writes the instance matrices and colours in place; only the used range uploads.
   */
  setVoxels(coords, colors, gridSize) {
    const count = Math.floor(coords.length / 3);
    if (!this.voxels || this.voxels.instanceMatrix.count < count) this._allocVoxels(count);
    const mesh = this.voxels;
    const m = mesh.instanceMatrix.array;
    const c = mesh.instanceColor.array;
    const s = 1 / gridSize;
    const lo = [Infinity, Infinity, Infinity];
    const hi = [-Infinity, -Infinity, -Infinity];
    const n0 = SRGB_TO_LINEAR[NEUTRAL[0]], n1 = SRGB_TO_LINEAR[NEUTRAL[1]], n2 = SRGB_TO_LINEAR[NEUTRAL[2]];
    for (let i = 0, j = 0, k = 0; i < count; i++, j += 16, k += 3) {
      const x = (coords[k] + 0.5) * s - 0.5;
      const y = (coords[k + 1] + 0.5) * s - 0.5;
      const z = (coords[k + 2] + 0.5) * s - 0.5;
      m[j] = s; m[j + 5] = s; m[j + 10] = s; m[j + 15] = 1;
      m[j + 12] = x; m[j + 13] = y; m[j + 14] = z;
      if (x < lo[0]) lo[0] = x; if (x > hi[0]) hi[0] = x;
      if (y < lo[1]) lo[1] = y; if (y > hi[1]) hi[1] = y;
      if (z < lo[2]) lo[2] = z; if (z > hi[2]) hi[2] = z;
      if (colors) {
        c[k] = SRGB_TO_LINEAR[colors[k]]; c[k + 1] = SRGB_TO_LINEAR[colors[k + 1]]; c[k + 2] = SRGB_TO_LINEAR[colors[k + 2]];
      } else {
        c[k] = n0; c[k + 1] = n1; c[k + 2] = n2;
      }
    }
    mesh.count = count;
    mesh.instanceMatrix.clearUpdateRanges();
    mesh.instanceMatrix.addUpdateRange(0, 16 * count);
    mesh.instanceMatrix.needsUpdate = true;
    mesh.instanceColor.clearUpdateRanges();
    mesh.instanceColor.addUpdateRange(0, 3 * count);
    mesh.instanceColor.needsUpdate = true;
    this.info.voxelCount = count;
    this.info.voxelFrames++;
    if (count && !this.fitted.has("voxels") && this.view === "voxels") {
      const h = s / 2;
      this.fit("voxels", new THREE.Box3(new THREE.Vector3(lo[0] - h, lo[1] - h, lo[2] - h),
        new THREE.Vector3(hi[0] + h, hi[1] + h, hi[2] + h)));
    }
    this.invalidate();
  }

  _allocVoxels(count) {
    let cap = 4096;
    while (cap < count) cap *= 2;
    if (this.voxels) {
      this.groups.voxels.remove(this.voxels);
      this.voxels.dispose();
    }
    const mesh = new THREE.InstancedMesh(this.voxelGeometry, this.voxelMaterial, cap);
    mesh.instanceMatrix.setUsage(THREE.DynamicDrawUsage);
    mesh.instanceColor = new THREE.InstancedBufferAttribute(new Float32Array(3 * cap), 3);
    mesh.instanceColor.setUsage(THREE.DynamicDrawUsage);
    mesh.frustumCulled = false; // the bounds change every frame; the object is always in view
    mesh.count = 0;
    this.voxels = mesh;
    this.groups.voxels.add(mesh);
  }

  /** A `mesh_preview` event (base64 float32 vertices, uint32 faces, uint8 RGB colours). */
  setMeshPreview(ev) {
    const V = ev.vertex_count;
    const F = ev.face_count;
    const vb = base64ToBytes(ev.vertices_data);
    const fb = base64ToBytes(ev.faces_data);
    const cb = base64ToBytes(ev.vertex_colors_data);
    if (vb.length !== 12 * V || fb.length !== 12 * F || cb.length !== 3 * V) {
      throw new Error(`mesh preview sizes do not match its counts (${V} vertices, ${F} faces)`);
    }
    const faces = new Uint32Array(fb.slice().buffer);
    for (let i = 0; i < faces.length; i++) if (faces[i] >= V) throw new Error("mesh preview face refers to a missing vertex");
    const colors = new Float32Array(3 * V);
    for (let i = 0; i < 3 * V; i++) colors[i] = SRGB_TO_LINEAR[cb[i]];
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(new Float32Array(vb.slice().buffer), 3));
    g.setAttribute("color", new THREE.BufferAttribute(colors, 3));
    g.setIndex(new THREE.BufferAttribute(faces, 1));
    g.computeVertexNormals();
    this._clear("mesh");
    this.groups.mesh.add(new THREE.Mesh(g, new THREE.MeshStandardMaterial({ vertexColors: true, roughness: 0.8 })));
    this.info.meshTriangles = F;
    this.fitted.delete("mesh");
    if (this.view === "mesh") this.show("mesh");
    this.invalidate();
    return F;
  }

  /** Load the final GLB (meshopt-compressed or not); resolves to its triangle count. */
  async loadGLB(url) {
    const gltf = await this.glbLoader.loadAsync(url);
    this._clear("glb");
    this.groups.glb.add(gltf.scene);
    this.info.glbTriangles = triangles(gltf.scene);
    this.fitted.delete("glb");
    if (this.view === "glb") this.show("glb");
    this.invalidate();
    return this.info.glbTriangles;
  }

  /** Load a Gaussian-splat PLY with Spark (imported on first use); resolves to the splat count. */
  async loadSplats(url) {
    const { SparkRenderer, SplatMesh } = await import("@sparkjsdev/spark");
    if (!this._spark) {
      this._spark = new SparkRenderer({ renderer: this.renderer });
      this.scene.add(this._spark);
    }
    const splats = new SplatMesh({ url });
    await splats.initialized;
    this._clear("splats");
    this.groups.splats.add(splats);
    this.info.splats = splats.packedSplats ? splats.packedSplats.numSplats : splats.numSplats || 0;
    this.fitted.delete("splats");
    if (this.view === "splats") {
      this.fit("splats", splats.getBoundingBox(true));
      this.show("splats");
    }
    this.invalidate();
    return this.info.splats;
  }

  /** What is drawn, for the page's info line and the tests. */
  stats() {
    const r = this.renderer.info.render;
    return { view: this.view, ...this.info, calls: r.calls, triangles: r.triangles,
      instancesDrawn: this.view === "voxels" && this.voxels ? this.voxels.count : 0 };
  }

  /** Draw now and measure the picture: share of pixels unlike the background, distinct colours. */
  pixelStats() {
    this.render();
    const gl = this.renderer.getContext();
    const w = gl.drawingBufferWidth;
    const h = gl.drawingBufferHeight;
    const px = new Uint8Array(4 * w * h);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
    const bg = new THREE.Color(BACKGROUND);
    const [br, bgg, bb] = [bg.r, bg.g, bg.b].map((v) => Math.round(255 * v));
    const colours = new Set();
    let object = 0;
    for (let i = 0; i < px.length; i += 4) {
      const r = px[i], g = px[i + 1], b = px[i + 2];
      if (Math.abs(r - br) + Math.abs(g - bgg) + Math.abs(b - bb) < 40) continue;
      if (Math.abs(r - g) < 8 && Math.abs(g - b) < 14 && r < 110) continue; // grid lines
      object++;
      colours.add(((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3));
    }
    return { width: w, height: h, objectFraction: object / (w * h), distinctColours: colours.size };
  }
}
